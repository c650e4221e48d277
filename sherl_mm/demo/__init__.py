"""Builders of the demo data sets (tooling, not library).

Everything here writes files for the demos; nothing in the library imports
it (``import sherl_mm`` and ``sherl_mm.register_all_modules()`` leave it
unloaded, which ``tests/test_grounding_data.py`` checks). The builders live
in this subpackage rather than next to their command-line front ends in
``tools/data/`` because three CLIs, ``tools/demo.py`` and the tests import
them: a package gives them one import path, without putting ``tools/`` on
``sys.path``.

* :mod:`.render` -- what every builder shares: emoji glyphs, photo crops,
  colour names, emoji on a 3 x 3 grid and pasting them on a canvas;
* :mod:`.grounding` -- referring expressions in MDETR's RefCOCO format
  (``tools/data/make_grounding_demo.py``);
* :mod:`.scenes` -- the square captioned scenes the retrieval and VQA demos
  draw;
* :mod:`.retrieval` -- Karpathy-format captions
  (``tools/data/make_retrieval_demo.py``);
* :mod:`.vqa` -- VQAv2-format questions and answers
  (``tools/data/make_vqa_demo.py``).

``docs/demo.md`` describes the data and what the demo measured on it.
"""
