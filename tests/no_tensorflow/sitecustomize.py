"""Makes TensorFlow, TFDS and clu look uninstalled in every process that has
this folder on PYTHONPATH: the packages an accelerator machine's image lacks.

A None entry in sys.modules is Python's own mark of a module that must not
be imported: ``import tensorflow`` raises ModuleNotFoundError, and
``importlib.util.find_spec('tensorflow')`` returns None, so code that asks
whether a package exists before using it (etils does) hears "no", as on a
machine where it is not installed.
"""

import sys

for _name in ('tensorflow', 'tensorflow_datasets', 'clu'):
  sys.modules[_name] = None
