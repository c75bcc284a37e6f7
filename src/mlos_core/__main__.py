from mlos_core.cli import main

main()
