`mission-control watch --sub ID` mints its tokens for another user, and presence frames print as
readable lines (`presence:join  bob  "Bob Stone"  (viewer)  connections=1`). The README's tour uses
it to show who is watching, and names the command that starts the hub again without reinstalling.
