"""Small integer helpers shared across the package."""


def ceil_div(n: int, d: int) -> int:
    """The smallest integer >= n / d, for positive d (works on Python ints and traced integer arrays alike)."""
    return -(-n // d)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return ceil_div(n, multiple) * multiple
