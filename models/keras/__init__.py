"""Reading Keras stacked LSTMs (``.keras`` and legacy ``.h5``) without TensorFlow.

- ``spec.py``: the Keras config JSON to a small typed description, refusing,
  with the layer and the setting named, whatever the export cannot reproduce.
- ``weights.py``: the arrays, read with h5py from either file format.
- ``bounds.py``: the limits that reading holds a file to, and the shapes its
  config gives every array, checked before any is read.
- ``convert.py``: the project's own ``StackedLSTM`` with those weights, exactly.
- ``parity.py``: the exported graph against Keras itself, when Keras is installed.

``models/keras_import.py`` is the ``lstm-import`` command built on these.
"""
