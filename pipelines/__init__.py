"""Ray jobs and the ``gbmmet`` command. They wire ``gbmmet`` and ``storage`` to Ray."""
