"""The gateway's vocabulary, pure: names, records, errors, transcript merging, token signing. No I/O, no tornado,
no MongoDB: every other layer may import it, it imports none of them."""
