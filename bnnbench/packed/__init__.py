"""The packed deployment format: a trained network as one small safetensors file, and back.

Layers, each importing only those above it in this list:

* :mod:`bnnbench.packed.reader`: a safetensors file read as untrusted data (the header checked
  whole, every size bounded by the file's length, tensors read into memory);
* :mod:`bnnbench.packed.packing`: the one bit order (8 signs per byte, least-significant bit
  first, bit 1 = negative), and the kernels' int32 words built from stored bits;
* :mod:`bnnbench.packed.encoding`: a deployed weight decomposed exactly (sign + scale, codebook +
  bit planes, or the quantizer's own ``pack``/``unpack``), its checks, and :class:`PackedWeight`,
  the weight quantizer a loaded layer decodes through;
* :mod:`bnnbench.packed.routes`: which loaded layers run on :mod:`bnnbench.kernels` and how;
* :mod:`bnnbench.packed.fusion`: BatchNorm -> sign between two such layers folded into the first
  one's kernel, which then writes the second one's packed input;
* :mod:`bnnbench.packed.format`: the file (tensors + validated metadata), written from a
  network and loaded back as the packed inference model.

The command that exports a trained run is :mod:`bnnbench.export`.
"""
