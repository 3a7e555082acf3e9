"""The paper's analyses as a library: one module per analysis, functions over arrays (N, C, H, W) or finished
``jtaba.runs.Run`` s, returning frozen dataclasses with the table's fields (``to_json()`` gives the dict the
``experiments`` commands write).

    import jtaba
    from jtaba import runs
    from jtaba.analyses import correlations, triangles
    r = runs.run(jtaba.load("default"), runs.RunSettings(n=64, steps=10))
    stats = triangles.of_run(r)               # Tab. 3: stats.most_probable_triangle.latent / .image / .noise
    table = correlations.of_run(r)            # Tab. 2: table.correlation["latents"].mean, table.null

Modules (paper reference; result): ``triangles`` (Sec. 3.3, Tab. 3; TriangleStats), ``correlations`` (Sec. 3.2,
Tab. 2; CorrelationTable), ``variances`` (Tab. 4; VarianceTable), ``normality`` (Fig. 2; NormalityTable), ``plain``
(Tab. 5; PlainTable), ``assignment`` (Sec. 4.3, Tab. 8, Tab. 11; AssignmentStats), ``approximation_error``
(Sec. 3.4, Tab. 6; ApproximationErrors), ``trajectories`` (Fig. 3; TrajectoryTable), ``precision``
(PrecisionTable), ``swap`` (Sec. 5, Tab. 9; SwapRow), ``interpolation`` (Sec. 4.1, Tab. 12; Scores), ``diversity``
(Sec. 4.2, Tab. 7 / 13; PairScores, Relative), ``training_dynamics`` (App. G.1 / G.2; CheckpointStats),
``alignment`` (App. G.3; Alignment, SeedAggregate).
The ``experiments.<name>`` commands make the runs and add flags, figures and the JSON / CSV / markdown writing.
"""
