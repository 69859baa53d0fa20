"""The built-in synthetic world: frost's offline stand-in for a detection data set and for ImageNet.

- kinds.py     the object kinds (shapes, textures, look-alike families) and the long-tail class draw
- render.py    drawing a scene (objects on clutter) or a classification crop
- dataset.py   the built-in long-tail detection set, written once in COCO or LVIS format and cached
- pretrain.py  the built-in classifier: a backbone pretrained on crops of the world (`frost pretrain`)
"""
