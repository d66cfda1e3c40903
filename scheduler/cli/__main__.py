from scheduler.cli.main import entry

entry()
