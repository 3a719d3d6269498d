from openbits.cli.openbits import main

main()
