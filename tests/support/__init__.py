"""Helpers shared by the tests (not collected as tests themselves)."""

#: The QEMU release the unit tests were written against and checked live
#: (the default profile is newer; the 10.0 profile has tests of its own and
#: the differential suite runs every scenario on both).
RELEASE = "7.2"
