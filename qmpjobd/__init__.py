"""qmpjobd: a QMP job daemon that implements QEMU's job API."""

__version__ = "0.1.0"

#: The QEMU release whose wire behaviour qmpjobd emulates.
EMULATED_QEMU_VERSION = (7, 2, 0)
