"""Framework hooks: ``contrib.flask`` and ``contrib.django``. Each imports its framework
only when used; the library itself never does."""
