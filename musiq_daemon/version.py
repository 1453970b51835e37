"""musiqd's version, in a leaf module: importing it does not import the package's API."""

__version__ = "0.1.0"
