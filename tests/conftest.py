pytest_plugins = ["tests.support.fixtures", "tests.support.daemon", "tests.support.proxy"]
