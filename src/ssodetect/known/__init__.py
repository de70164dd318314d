"""Known objects: orbit files (MPCORB.DAT, JPL SBDB), two-body ephemerides for any observer, and the
identification of linked objects with them."""
from ssodetect.known.orbits import ORBIT_COLUMNS, read_mpcorb, read_orbits, read_sbdb, write_sbdb
from ssodetect.known.propagate import Observer, apparent_magnitude, heliocentric_states, predict

__all__ = ["ORBIT_COLUMNS", "Observer", "apparent_magnitude", "heliocentric_states", "predict", "read_mpcorb",
           "read_orbits", "read_sbdb", "write_sbdb"]
