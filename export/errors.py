class ExportError(Exception):
    """A user error while exporting: the message is one line naming the input and the reason."""
