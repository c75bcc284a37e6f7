from axon.cli import main

main()
