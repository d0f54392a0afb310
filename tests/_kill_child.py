"""The child process of the kill -9 tests of retraining and rank: a `nas-restore` command as a user runs it,
which SIGKILLs its own process at the start of epoch ``KILL_AT_EPOCH`` of a retraining (after the previous
epoch's last.ckpt was written); the kill is added from outside the library."""
import textwrap

CHILD = textwrap.dedent("""
    import os, signal, sys
    import pytorch_lightning as pl

    kill_at = int(os.environ.get("KILL_AT_EPOCH", "-1"))

    class KillNine(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    original = pl.Trainer.__init__

    def with_kill(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), KillNine()], **kwargs)

    pl.Trainer.__init__ = with_kill
    from nas_restore.cli import main
    sys.exit(main(sys.argv[1:]))
""")
