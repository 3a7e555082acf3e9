"""The paper's analyses, one ``python -m experiments.<name>`` each: flags -> settings -> library calls (``jtaba``,
``jtaba.runs``, ``jtaba.metrics``, ``jtaba.plotting``) -> tables (JSON, CSV) and figures (PNG)."""
