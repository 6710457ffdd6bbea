"""hoopctl: log in, reach targets through the hoop broker, approve and replay sessions."""

import warnings

# cryptography 51 deprecates DSA, and asyncssh names DSA types at import, which printed five
# warnings on every command. hoopctl never uses DSA keys, so keep that noise off users' stderr.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")

__version__ = "0.1.0"
