"""Input data: the TFDS input pipeline and the bundled moving digits dataset."""
