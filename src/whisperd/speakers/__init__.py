"""Who speaks when: voice embeddings of audio windows (:mod:`.encoder`, without PyTorch) and
the speakers they group into (:mod:`.clustering`).

The speaker model's weights come with the optional ``speakers`` extra
(``pip install --no-deps resemblyzer==0.1.4``).
"""
