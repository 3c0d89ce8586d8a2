"""Placeholder ``natten`` package for ``PYTHONPATH`` (see ``natten_mps.natten_alias.path_entry``).

Imported as ``natten``, it installs the natten_mps alias of the NATTEN release named by the
``NATTEN_MPS_AS_NATTEN`` environment variable and hands the import over to it. It holds nothing else;
imported under any other name it does nothing.
"""
from natten_mps.natten_alias import _serve_from_path_entry

_serve_from_path_entry(__name__)
