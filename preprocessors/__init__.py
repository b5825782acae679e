"""Control-video makers: RGB frames in, pose or depth control frames out, in batches (see ``base.Preprocessor``).

Pose: DWPose (VACE's annotator) and OpenPose (``pose.py``); depth: MiDaS DPT-Hybrid (VACE's) and Depth Anything V2
(``depth.py``). Each class loads from the files it is handed and knows nothing of the server's weights directory:
the names requests use, the folders and the file names are ``pipelines.manifest``'s, and ``pipelines.annotators``
joins them to these classes. ``frames.py`` is the frame format every stage passes along.

Imports point one way: ``pipelines`` imports this package, which imports nothing else of ours. This ``__init__``
imports nothing, so taking the frame format does not load the annotators' libraries (onnxruntime, controlnet-aux).
"""
