"""
The HTTP side of the listener: the C{Site} and its resources (L{site}) and the JSON API (L{api}).
"""
