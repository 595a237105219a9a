from lossproof.cli import main

main()
