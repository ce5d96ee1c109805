from nlpkit.cli import main

main()
