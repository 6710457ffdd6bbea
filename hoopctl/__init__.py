"""hoopctl: log in, reach targets through the hoop broker, approve and replay sessions."""

import sys
import warnings

from broker.library_probe import install as install_quiet_library_probe

# cryptography 51 deprecates DSA, and asyncssh names DSA types at import, which printed five
# warnings on every command. hoopctl never uses DSA keys, so keep that noise off users' stderr.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")
# And the looks of asyncssh (liboqs, libnettle) and of keyring's macOS backend (picking a
# backend) for C libraries start no process (broker.library_probe: no ldconfig, no C
# compiler; 40-90 ms a process).
install_quiet_library_probe()
# hoopctl authenticates with OpenSSH keys and certificates only. asyncssh loads its X.509
# support (cryptography's x509 package: about 30 ms of every command that connects) only
# where it can, and works without it; in hoopctl it cannot.
sys.modules.setdefault("asyncssh.crypto.x509", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
