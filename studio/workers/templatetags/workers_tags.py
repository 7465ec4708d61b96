from django import template

register = template.Library()


@register.filter
def seconds_ago(seconds: int) -> str:
    """12 s ago, 5 min ago, 3 h ago, 2 d ago: a heartbeat's age at a glance."""
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


@register.filter
def mib(value: int) -> str:
    """MiB as GiB once it is large: 81559 → 79.6 GiB, 512 → 512 MiB."""
    value = int(value or 0)
    return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value} MiB"
