"""TensorBoard scalars and images of a run, written without TensorFlow.

clu's default writer goes through TensorFlow's summary API, and importing
TensorFlow costs 4-5 s at every start of train.py. A local workdir gets the
same event files from plain Python here: TensorBoard's record framing
(``RecordWriter``) around its ``Event`` protos, which need only protobuf.
A remote workdir (``gs://...``) keeps clu's writer, whose file system layer
reaches cloud storage. Either way the loss lines themselves are printed by the
train loop, not by the writer.
"""

from __future__ import annotations

import io
import os
import socket
import time
from typing import Mapping

import numpy as np


def create_writer(logdir: str, *, enabled: bool = True):
  """The writer of a run's TensorBoard events.

  Args:
    logdir: the run's workdir.
    enabled: False on processes other than 0: a writer that discards.

  Returns:
    An object with write_scalars(step, {name: value}), write_images(step,
    {name: uint8 [N, H, W, C]}), flush() and close().
  """
  if not enabled:
    return _Discard()
  if '://' in logdir:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    return metric_writers.create_default_writer(logdir)
  return EventWriter(logdir)


class _Discard:
  """What processes other than 0 write to."""

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_images(self, step, images):
    del step, images

  def flush(self):
    pass

  def close(self):
    pass


class EventWriter:
  """Appends TensorBoard events to a new events.out.tfevents.* file in ``logdir``.

  Args:
    logdir: a local directory (created if missing).
  """

  def __init__(self, logdir: str):
    # Imported here: only a run that writes events needs them.
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    os.makedirs(logdir, exist_ok=True)
    # The name TensorBoard looks for; host and pid keep concurrent writers apart.
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}.vdm')
    self.path = os.path.join(logdir, name)
    self._records = record_writer.RecordWriter(open(self.path, 'wb'))
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def _summary(self, step: int, values: list) -> None:
    self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                      summary=self._summary_pb2.Summary(value=values)))
    self.flush()  # Every few hundred steps: TensorBoard sees a live run.

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One TensorBoard scalar per name at ``step``."""
    value = self._summary_pb2.Summary.Value
    self._summary(step, [value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """PNG images at ``step``: uint8 [N, H, W, C] per name (tags name/0, name/1, ...
    when N > 1)."""
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
    summary = self._summary_pb2.Summary
    values = []
    for key, batch in images.items():
      batch = np.asarray(batch)
      for i, image in enumerate(batch):
        buffer = io.BytesIO()
        iio.imwrite(buffer, image[..., 0] if image.shape[-1] == 1 else image, extension='.png')
        h, w, c = image.shape
        values.append(summary.Value(
            tag=key if len(batch) == 1 else f'{key}/{i}',
            image=summary.Image(height=h, width=w, colorspace=c,
                                encoded_image_string=buffer.getvalue())))
    self._summary(step, values)

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()
