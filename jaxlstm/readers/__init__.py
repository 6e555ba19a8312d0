"""The bottom layer of porting: one reader per file format, each trusting no number in the file.

Every reader turns a file into ``{key: numpy array}`` and fails only with
:class:`~jaxlstm.readers.guard.CheckpointError`. The rules they share live in
:mod:`jaxlstm.readers.guard`: paths a file names must stay inside its directory, sizes,
shapes, strides and offsets are checked against the bytes present before anything is
allocated, compressed members inflate at most to a bounded ratio of their stored size, and
nesting depth is bounded. No reader runs code from a file.

- :mod:`~jaxlstm.readers.torchscript`: ``torch.jit.save`` archives, without torch.
- :mod:`~jaxlstm.readers.torch_pickle`: ``torch.save`` files, through
  ``torch.load(weights_only=True)``.
- :mod:`~jaxlstm.readers.npz`: ``numpy.savez`` archives, without pickles.
- :mod:`~jaxlstm.readers.onnx`: ONNX models and their external data.
- :mod:`~jaxlstm.readers.hdf5`: HDF5 (Keras ``.h5``) through h5py, never leaving the file.
"""
