"""SLiMe (ICLR 2024): class embeddings fit on a few annotated images, applied to a collection.

``algorithm`` holds the pure functions and the ``[slime]`` settings, ``segmenter`` the model-driving
:class:`~labeler.methods.slime.segmenter.Slime`, ``fit``/``data``/``embedding_set`` the fitting side,
``command`` the ``labeler slime`` subcommands.
"""
