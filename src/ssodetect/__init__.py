"""ssodetect: find moving Solar System Objects in sequences of astronomical images.

The package layout follows the pipeline:

``io``          read FITS exposures (Euclid VIS MEF or plain images), headers, times, WCS
``detect``      background, source extraction, cosmic-ray / artefact classification
``astrometry``  pixel to sky transformation, tangent-plane projection
``link``        stationary-source removal and linking of movers into tracklets
``report``      output tables and ADES PSV
``pipeline``    configuration-driven run with executors (serial / Dask)
``simulate``    Euclid-like scene simulator with truth
``evaluate``    metrics against simulated truth
``cli``         the ``ssodetect`` command
"""
from ssodetect._version import __version__

__all__ = ["__version__"]
