"""EdgeKit's host-side build tooling: toolchains, board profiles, the emulated board, the glibc check."""
