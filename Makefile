# make demo | make test | make install | make clean
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sherl_mm-installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): setup.py tools/install.sh
	bash tools/install.sh $(VENV)
	touch $(STAMP)

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf work_dirs data/demo_grounding data/demo_retrieval data/demo_vqa
