"""hoop-broker: the session broker."""

import warnings

from broker.library_probe import install as install_quiet_library_probe

# cryptography 51 deprecates DSA, and asyncssh names DSA types at import, which printed five
# warnings on every command. hoopctl never uses DSA keys, so keep that noise off users' stderr.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")
# And asyncssh's look for liboqs and libnettle starts no process (broker.library_probe: no
# ldconfig, no C compiler; 40-90 ms a process).
install_quiet_library_probe()

__version__ = "0.1.0"
