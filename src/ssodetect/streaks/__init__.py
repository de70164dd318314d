"""Fast movers: trail fragments joined, trailed-PSF centring, satellites and bleeds labelled."""
from ssodetect.streaks.detect import cut_ends, edge_cut, edge_distance, join_fragments, refine_trails
from ssodetect.streaks.model import TrailFit, fit_trail, moment_centre, trail_on_sky, trailed_psf

__all__ = ["cut_ends", "edge_cut", "edge_distance", "join_fragments", "refine_trails", "TrailFit", "fit_trail", "moment_centre", "trail_on_sky", "trailed_psf"]
