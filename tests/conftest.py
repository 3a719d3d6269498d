pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.daemon",
    "tests.support.proxy",
    "tests.support.kdc",
    "tests.support.apache",
    "tests.support.squid",
    "tests.support.socks",
    "tests.support.users",
]
