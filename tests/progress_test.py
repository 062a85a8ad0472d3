"""Progress lines: ETAs that leave out the slow start, and where the lines go."""

import pytest

from vdm import progress


def test_eta_leaves_out_the_first_interval_then_the_second():
  # Started at 0 s; the first unit took a minute (a compile), the next 2 s,
  # the one after 1 s.
  rate = progress.Rate()
  assert rate.eta(10) is None
  rate.mark(1, now=60.0)
  assert rate.eta(10) is None  # Nothing to go on but the compile.
  rate.mark(2, now=62.0)
  assert rate.eta(10) == pytest.approx(20.0)  # 2 s per unit since the first report.
  rate.mark(3, now=63.0)
  # From three reports on, the rate runs from the second: 1 s per unit.
  assert rate.eta(10) == pytest.approx(10.0)


def test_progress_goes_to_stderr_with_an_eta_once_known(capsys):
  report = progress.Progress('extend_video', 4, 'clips')
  report(1, 'clip 0 done')
  report(2)
  report(4)
  captured = capsys.readouterr()
  assert captured.out == ''
  lines = captured.err.splitlines()
  assert lines[0].startswith('extend_video: clip 0 done, 1/4 clips, ') and 'ETA' not in lines[0]
  assert 'ETA' in lines[1] and 'ETA' not in lines[2]  # The last line has nothing left.


@pytest.mark.parametrize('seconds, text', [(0.4, '0s'), (45, '45s'), (440, '7m20s'),
                                            (11100, '3h05m')])
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text
