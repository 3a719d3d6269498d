from openbits.cli.bitsadmin import main

main()
