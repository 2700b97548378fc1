from boxer.cli import main

main()
