"""Analysis metrics of the paper (Sec. 3-5, App. B-G) as pure numpy functions over NCHW arrays (as written to disk).

Float64 arithmetic unless a function says otherwise; memory stays bounded for 10,240-sample files (memmaps work).
One concept per module: distribution (KL, stats, MAE, variance), correlation (top-k pixel correlation), triangles
(angles, distances, most probable triangle), assignment (L2 nearest assignment), plain (plain-surface masks),
interpolation (SLERP / lerp, trajectory-vs-interpolation distances), core (metrics.json).
"""
from jtaba.metrics.alignment import (
    batch_min_max,
    cca_correlations,
    cka,
    gram,
    hsic,
    knn_indices,
    mutual_knn,
    mutual_knn_counts,
    svcca,
    svd_reduce,
)
from jtaba.metrics.approximation import approximation_errors, early_rest_sums, early_steps
from jtaba.metrics.assignment import assignment_accuracy, assignment_accuracy_divs, mse_distance_matrix, nearest_indices
from jtaba.metrics.attractors import (
    attractor_counts,
    lowest_variance,
    most_attractive,
    sample_mean_squares,
    sample_variances,
)
from jtaba.metrics.core import core_metrics
from jtaba.metrics.correlation import top_k_corr, top_k_corr_in_patches
from jtaba.metrics.distribution import gaussian_kl, kl_div, kl_div2, latent_variance, mae, mean_std, stats
from jtaba.metrics.fid import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid,
    knn_radii,
    manifold_coverage,
    mmd2_unbiased,
    polynomial_kernel,
    precision_recall,
)
from jtaba.metrics.image_quality import psnr, resolve_value_range, ssim
from jtaba.metrics.interpolation import interpolation_distances, lerp, min_max_scale, slerp
from jtaba.metrics.normality import normality_counts, qq_quantiles, shapiro_normality, shapiro_p_values
from jtaba.metrics.plain import find_plain_areas, masked_mean_std, plain_stats
from jtaba.metrics.trajectory import closer_to_noise, closer_to_noise_fraction
from jtaba.metrics.triangles import (
    Triangle,
    angle_histogram,
    calc_angles,
    calc_distances,
    find_max_prob_triangle,
    most_probable_triangle,
    vertex_angles,
)
