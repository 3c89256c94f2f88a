"""What every source produces, written one way: the ``f``/``g`` graph files, the explain
graph (over :mod:`.graph_ops`), the verification against the source, labels, the manifest's
shared entries, and the staged, all-or-nothing artifact folder."""
