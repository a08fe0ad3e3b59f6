"""Reading Keras stacked LSTMs (``.keras`` and legacy ``.h5``) without TensorFlow.

- ``spec.py``: the Keras config JSON to a small typed description, refusing,
  with the layer and the setting named, whatever the export cannot reproduce.
- ``layers.py``: that typed description (the dataclasses the rest reads).
- ``files.py``: opening either file format within bounds, its config and arrays.
- ``weights.py``: each layer's arrays, located and read with h5py.
- ``bounds.py``: the limits that reading holds a file to, and the shapes its
  config gives every array, checked before any is read.
- ``convert.py``: the project's own ``StackedLSTM`` with those weights, exactly.
- ``parity.py``: the exported graph against Keras itself, when Keras is installed.

``models/keras_import.py`` is the ``lstm-import`` command built on these.
"""
