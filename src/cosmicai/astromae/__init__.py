"""AstroMAE: the network CosmicAI runs, its checkpoints, export to ONNX and INT8 quantization.

The torch parts (:mod:`.network`, :mod:`.checkpoint`, :mod:`.export`) need the ``astromae``
extra; nothing here is imported by the worker or Lambda, which run the exported ONNX file.
"""
