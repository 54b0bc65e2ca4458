"""NewBie's text side: the Gemma 3 and Jina CLIP v2 towers, their tokenizers and files, the
loaded pair with its cache, and CONDITIONING (``text/conditioning.py``). The XML prompt language
itself is ``prompting/``."""
