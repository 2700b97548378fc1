// A java.net client with default settings: the name is resolved by InetAddress (getaddrinfo,
// AF_UNSPEC), and the socket is an AF_INET6 one connecting to the v4-mapped overlay address.
// Prints one line per connection; "nio" uses a non-blocking SocketChannel with a Selector
// (epoll) and finishConnect, as Netty-style servers do.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;

public class EchoClient {
    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        InetAddress addr = InetAddress.getByName(host);
        System.out.println("resolved " + addr.getHostAddress());
        try (Socket s = new Socket(host, port)) {
            PrintWriter out = new PrintWriter(s.getOutputStream(), true);
            BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream()));
            out.println("hello");
            System.out.println("blocking " + in.readLine());
            System.out.println("local " + s.getLocalAddress().getHostAddress());
        }
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress(host, port), 5000); // timeout: non-blocking + poll
            PrintWriter out = new PrintWriter(s.getOutputStream(), true);
            BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream()));
            out.println("timed");
            System.out.println("timeout " + in.readLine());
        }
        try (Selector sel = Selector.open(); SocketChannel ch = SocketChannel.open()) {
            ch.configureBlocking(false);
            boolean now = ch.connect(new InetSocketAddress(host, port));
            SelectionKey key = ch.register(sel, SelectionKey.OP_CONNECT);
            while (!now) {
                sel.select(5000);
                now = ch.finishConnect();
            }
            key.cancel();
            sel.selectNow(); // deregisters, so the channel may go back to blocking mode
            ch.write(ByteBuffer.wrap("nio\n".getBytes(StandardCharsets.UTF_8)));
            ch.configureBlocking(true);
            ByteBuffer buf = ByteBuffer.allocate(4096);
            StringBuilder sb = new StringBuilder();
            while (ch.read(buf) > 0) {
                buf.flip();
                sb.append(StandardCharsets.UTF_8.decode(buf));
                buf.clear();
            }
            System.out.println("nio " + sb.toString().trim());
        }
    }
}
