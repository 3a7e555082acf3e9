"""The paper's analyses as a library: one module per analysis, functions over arrays (N, C, H, W) or a finished
``jtaba.runs.Run``, returning frozen dataclasses with the table's fields (``to_json()`` gives the dict the
``experiments`` commands write).

    import jtaba
    from jtaba import runs
    from jtaba.analyses import triangles
    r = runs.run(jtaba.load("default"), runs.RunSettings(n=64, steps=10))
    stats = triangles.of_run(r)               # Tab. 3: most probable triangle, mean angles, L2 distances
    stats.most_probable_triangle.angles       # (latent, image, noise) degrees

The ``experiments.<name>`` commands add flags, figures and the JSON / CSV / markdown writing on top.
"""
