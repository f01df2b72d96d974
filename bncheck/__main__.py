from bncheck.cli import main

main()
